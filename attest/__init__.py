"""Attestation evidence: parse (abi), verify (signatures, chains, pinned roots), validate (policy)."""
