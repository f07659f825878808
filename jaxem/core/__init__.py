"""The engine: the model contract, blocks, the E-step, passes, the gradient M-step, the loop, the
in-memory runner, the driver every fit goes through, and the result (see ARCHITECTURE.md). Nothing
here imports from the other folders."""
