"""``python -m trinity.pool``: the same command as ``trinity serve``."""

from trinity.pool.cli import serve_command

if __name__ == "__main__":
    serve_command()(prog_name="python -m trinity.pool")
