"""cvm_boot."""
