"""metnet: MetNet-style probabilistic precipitation nowcasting."""

__version__ = "0.1.0"
