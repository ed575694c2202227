"""The end-to-end benchmark shipped with the package (``fastprune bench``), one module per stage:
``plan`` (the matrix of runs, ``--continue``), ``run`` (data, settings, one timed run), ``report``
(statistics, markdown), ``plots``, ``cli``; and ``machine``, the description every result file
carries. The scripts under benchmarks/ and studies/ call into here."""
