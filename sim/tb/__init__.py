"""cocotb testbenches (they run inside the simulator, started by sim.runner)."""
