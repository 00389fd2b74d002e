"""The package version, in its own module so that every layer can read it without
importing the package's top level."""
__version__ = "0.2.0"
