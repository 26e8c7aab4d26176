"""``python -m partguard``: the same CLI as the ``partguard`` script."""

from partguard.cli import run

if __name__ == "__main__":
    run()
