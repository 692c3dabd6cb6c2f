"""The browser device's built page (web/, `npm run build`); served by `edgezo coordinate --web-port`."""
