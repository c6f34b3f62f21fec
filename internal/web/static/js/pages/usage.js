import { page } from "../ui.js";
export function dashboard() { return page("usage", { intro: "coming" }); }
export function usage() { return page("usage", { intro: "coming" }); }
