"""Experiments: end-to-end studies that test the seed paper's claims on pleura's data."""
