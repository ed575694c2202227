"""Benchmarks shipped with the package: ``fastprune bench`` (end to end) and the machine
description every result file carries. The scripts under benchmarks/ call into here."""
