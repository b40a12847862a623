"""ONNX models: the serving contract and the graph builders."""
