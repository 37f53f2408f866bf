"""The Tortoise networks, written here, state-dict compatible with the official checkpoints."""
