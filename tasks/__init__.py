"""Thin Prefect tasks, one per stage: call a compute function, log it, return something small.

Tasks pass paths, digests and run ids between each other, never models or big arrays.
"""
