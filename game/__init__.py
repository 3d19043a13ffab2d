"""The Hearth client: the pygame-ce window, the headless runner and the ``hearth`` command line."""
