"""Reading runs and sweep members back: reports, convergence tables, figures."""
