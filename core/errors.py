"""The error every part of the core raises for a run that cannot be set up as configured."""


class ConfigError(ValueError):
    """One or more configuration problems; ``errors`` lists them, one line each."""

    def __init__(self, errors):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        if len(self.errors) == 1:
            message = self.errors[0]
        else:
            message = f"{len(self.errors)} problems in the configuration:\n  " + \
                "\n  ".join(self.errors)
        super().__init__(message)
