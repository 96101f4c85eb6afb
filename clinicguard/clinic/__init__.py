"""The clinic domain: clinics, patients, care teams, appointments, records, treatments."""
