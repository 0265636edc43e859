"""client_cli."""
