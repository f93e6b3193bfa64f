"""pyflannel: a flannel-compatible overlay network (flanneld, flannelctl, CNI plugin) in Python."""
__version__ = "0.1.0"
