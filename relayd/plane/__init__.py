"""The forwarding plane: what the workers and the kernel path carry, and the shells telling them."""
