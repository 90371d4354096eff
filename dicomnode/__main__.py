"""`python -m dicomnode` runs the CLI."""

from dicomnode.cli import app

if __name__ == "__main__":
    app()
