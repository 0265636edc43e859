"""attest/sevsnp."""
