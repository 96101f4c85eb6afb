"""Authentication: identities, passwords, tokens, sessions, MFA."""
