"""The learnability ladder: small generated tasks of rising difficulty, trained and scored with the real
nano model, with controls that each swap out one component. Entry point: benchmarks/ladder.py."""
