"""Plain helper code shared by the test modules (tiny configs, checkpoint writers, sample data).

Test modules import from here (`from _helpers.infer import noise_image`), never from each other; shared
pytest fixtures built on these helpers live in `tests/conftest.py`.
"""
