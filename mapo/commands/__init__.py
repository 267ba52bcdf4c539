"""Sub-commands of the ``mapo`` CLI, one module each.

Each module defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are
imported only when their command runs, so ``mapo --help`` stays fast.
"""
