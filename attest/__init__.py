"""Attestation evidence: parse (abi), verify (signatures, chains, roots), validate (policy)."""
