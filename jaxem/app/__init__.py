"""What sits on top of the library: the command line, estimator files and data tables, plots,
reports, model selection and the teaching helpers."""
