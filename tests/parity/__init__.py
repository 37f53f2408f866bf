"""Hardware parity: every model, the front end and the pipeline on each backend and dtype vs CPU float32."""
