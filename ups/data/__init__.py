"""Data layer: PDEBench HDF5 I/O, initial conditions, reference solvers, exact solutions."""
