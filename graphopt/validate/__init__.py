"""Validation: output comparison and accuracy (numerics), latency per provider, and the gate's verdict."""
