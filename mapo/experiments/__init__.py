"""Small, seeded experiments that check claims of the method (run with ``python -m mapo.experiments.<name>``)."""
