import { page } from "../ui.js";
export function list() { return page("credentials", { intro: "coming" }); }
