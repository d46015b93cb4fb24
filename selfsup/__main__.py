import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch is being imported: one line, no traceback
    print("selfsup: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
