"""Entry point for `python -m devhost [--port 7071] [--app-dir .]`."""

from devhost.host import main

if __name__ == "__main__":
    raise SystemExit(main())
