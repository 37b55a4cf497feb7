"""python -m raydebias.tiny OUT_DIR [--only NAME ...] [--force] (see `raydebias.tiny.cache.main`)."""

import sys

from raydebias.tiny.cache import main

if __name__ == "__main__":
    sys.exit(main())
