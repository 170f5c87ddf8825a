"""The core layer: configuration, the data contract, tracking (the only MLflow importer),
errors and the work-folder layout. Every other layer may import it; it imports none of them."""
