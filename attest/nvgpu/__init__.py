"""attest/nvgpu."""
