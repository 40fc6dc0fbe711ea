"""What runs inside an infer job: input tables, model lookup, the batch runner."""
