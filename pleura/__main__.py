"""``python -m pleura`` runs the command-line interface."""

from pleura.cli import main

if __name__ == "__main__":
    main()
