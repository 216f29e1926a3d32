"""The `featurestore` command line. One module per verb; see ``main.VERBS``."""
