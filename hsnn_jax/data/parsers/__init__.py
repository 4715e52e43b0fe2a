"""One parser per public file format; each returns a `RecDataset`. No tensorflow-datasets here."""
