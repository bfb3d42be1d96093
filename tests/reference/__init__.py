"""Numpy references (test oracles) of maths the product computes in ``keras.ops``."""
