"""attest/tdx."""
