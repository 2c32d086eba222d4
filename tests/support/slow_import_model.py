"""A model module that takes long to import, as ones pulling in big frameworks do."""

import time

from PIL import Image

from emotion import Model, Response

print("importing slow_import_model", flush=True)
time.sleep(30)


class Model30(Model):
    def process_sample(self, image: Image.Image) -> Response:
        return Response()
