"""The networks a model is built from: their contract (`contract.py`: what the model hands a network; `abstract.py`:
bases that refuse an incomplete subclass), their initialisation, the encoders q(z|x), the image decoders on the
skip-decoder backbone, the text decoders (their base and the LSTM; the Transformer) and the densities they share."""
