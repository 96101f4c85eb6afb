"""Build clinicguard/auth/data/breached-sha1.txt, the offline breached-password corpus.

Sources: the 30,000 most common passwords of public breach dumps as zxcvbn ships them, a
list of common Brazilian-Portuguese passwords, and the mutations people use to satisfy
composition rules (capital first letter, trailing digits, symbols and years). Output: one
uppercase SHA-1 per line, sorted (the same format as the full Pwned Passwords download,
without counts), which OfflineBreachedPasswordChecker also reads from the full Pwned
Passwords download. Run: .venv/bin/python scripts/build_breached_corpus.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from zxcvbn.frequency_lists import FREQUENCY_LISTS

PORTUGUESE = [
    "senha", "senha123", "mudar123", "brasil", "flamengo", "corinthians", "palmeiras",
    "saopaulo", "vasco", "gremio", "cruzeiro", "santos", "botafogo", "fluminense",
    "internacional", "amor", "meuamor", "felicidade", "familia", "deus", "jesus", "clinica",
    "saude", "medico", "hospital", "paciente", "bemvindo", "acesso", "admin", "usuario",
    "teste", "mudar", "trocar", "senhanova", "minhasenha", "123mudar", "qwerty",
]
SUFFIXES = ["", "1", "123", "!", "1!", "123!", "@123", "@1",
            "2024", "2025", "2026", "@2025", "@2026", "2026!"]
MUTATED_TOP = 1000


def candidates() -> set[str]:
    words = list(FREQUENCY_LISTS["passwords"])
    found = set(words) | set(PORTUGUESE)
    for word in words[:MUTATED_TOP] + PORTUGUESE:
        for base in {word, word.capitalize()}:
            for suffix in SUFFIXES:
                found.add(base + suffix)
    return found


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "clinicguard/auth/data/breached-sha1.txt"
    hashes = sorted(
        hashlib.sha1(p.encode(), usedforsecurity=False).hexdigest().upper() for p in candidates()
    )
    out.write_text("\n".join(hashes) + "\n")
    print(f"{len(hashes)} hashes -> {out}")


if __name__ == "__main__":
    main()
