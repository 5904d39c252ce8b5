"""mnistlab: LeNet-5 versus an MLP on MNIST, and what regularization does to LeNet-5."""

__version__ = "0.1.0"
