"""Sample sheets built from public cohorts' metadata (``pastflow cohort``): HEST-1k."""
