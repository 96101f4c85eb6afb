"""Cryptography: the only package that imports the ``cryptography`` primitives."""
