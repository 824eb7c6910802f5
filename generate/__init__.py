"""The generative models around the coders: the captioner writes a caption
for a record that has none before it is encoded (``captioner``), and the
refiner redraws a decoded image conditioned on its caption (``refiner``).
Neither is part of a bitstream: the archive keeps what the coders wrote."""
