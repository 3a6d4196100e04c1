"""Solution code of the book's exercises: one module per chapter, one ``exercise_N`` function each.

Each function computes its answer with assertions and returns it; ``tests/test_solutions.py`` runs
every one of them, so no solution can rot.  Chapters show the code with ``{literalinclude}`` inside
a solution dropdown, and run it in a cell tagged ``solution``.
"""
