"""Workers that run fine-tuning jobs; job state lives in the database, so nothing is lost when one dies."""
